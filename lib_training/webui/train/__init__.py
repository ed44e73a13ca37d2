"""The Train sub-tab: layout (`ui`), actions, the form <-> TrainConfig (`form`), presets, the
estimate, the run list (`runs`) and the dataset line (`dataset_summary`)."""

"""The Dataset sub-tab: layout (`ui`), actions, dataset names, class images, A1111's captioners
(`interrogators`) and thumbnails."""

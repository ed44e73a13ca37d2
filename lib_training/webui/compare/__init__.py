"""The Compare sub-tab: layout (`ui`), the form (`form`), the grid run and numbers (`actions`), and
A1111's txt2img as the grid's generator (`generator`)."""

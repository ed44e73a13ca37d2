"""The WebUI side: A1111's loaded ldm model as an engine backend, and the bridge to A1111.

`ldm_adapter` needs only the `ldm` package (tests build tiny ldm models without A1111);
everything that touches A1111's `modules.*` imports them lazily, inside functions.
"""

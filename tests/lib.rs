//! Nothing here: the end-to-end tests live in `it/`, as one test binary.

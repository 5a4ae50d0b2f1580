//! Packaging: encoded frames in, init and media segments that MSE plays out.

//! placeholder for dependency prebuild

//! Helpers shared by strata's benchmarks.

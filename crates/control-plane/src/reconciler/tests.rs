//! Unit tests of the reconciler.

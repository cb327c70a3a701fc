//! Sluice node.

//! Environments for g2po experiments.

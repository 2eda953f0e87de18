//! Segmented append log.

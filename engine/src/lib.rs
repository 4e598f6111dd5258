//! philotes-engine: the generic stream-of-stages runtime (placeholder; being written).

//! Known-answer tests for the continued record layer (placeholder until filled in).

"""Model-agnostic explanations for any predict function: maskers, LIME, Shapley values."""

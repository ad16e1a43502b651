"""Data sets: scikit-learn's digits (embedded default) and ImageFolder trees, split disjointly."""

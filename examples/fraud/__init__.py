"""A card-fraud project: generated transactions, windowed features, a deployed model."""

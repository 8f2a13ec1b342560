"""`analyzer export`: datasets for training, made from what the sidecars already say."""

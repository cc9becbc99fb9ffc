"""iosweep runner: the only package that imports hydra, omegaconf or mlflow."""

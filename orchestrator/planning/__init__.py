"""A spec made ready to run: load and check it, plan its trials, check token budgets, prepare models and data."""

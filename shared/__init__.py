"""Thin common toolkit of the monorepo: metrics, configs, training utilities, dataset tools, synthetic data.

Only what two or more paper packages use lives here; models, losses and paper algorithms belong to their package.
"""

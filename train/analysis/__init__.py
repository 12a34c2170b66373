"""Analyses of a trained run: robustness (corruptions, adversarial attacks), explanations (Grad-CAM),
fairness across groups, cross-validation and hyper-parameter search. Each adds its figures to the run's
report through :mod:`train.report`."""

"""Analyses of a trained run: robustness (corruptions, adversarial attacks), explanations (Grad-CAM),
fairness across groups, cross-validation and hyper-parameter search. Each analysis of a run stores its
results with it (:func:`train.report.add_analysis`: ``analysis/<name>.json`` and its images), which renders
the run's report again. The command lines are the top-level train/<name>.py."""

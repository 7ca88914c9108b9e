"""mljax.linear: PCA, multinomial logistic regression and k-fold cross-validation in pure JAX.

Modules: :mod:`~mljax.linear.pca`, :mod:`~mljax.linear.logistic_regression`,
:mod:`~mljax.linear.model_selection`.
"""

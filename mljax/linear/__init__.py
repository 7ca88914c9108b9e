"""mljax.linear: PCA, multinomial logistic regression and k-fold cross-validation in pure JAX."""

"""mljax.cluster: k-means (:mod:`.kmeans`), Gaussian mixtures by EM (:mod:`.gmm`) and the
mixture-of-Gaussians classifier (:mod:`.mog_classifier`); ``_chunks`` holds the row-chunked
passes the first two share."""

__all__ = ["gmm", "kmeans", "mog_classifier"]

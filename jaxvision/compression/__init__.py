"""Learned image compression: GDN autoencoders with factorized, hyperprior and
context priors (Ballé et al. 2017/2018, Minnen et al. 2018), their host-side entropy
coder, the .jvc file format and rate-distortion evaluation (docs/compression.md)."""

#!/usr/bin/env bash
# Debian's Fashion-MNIST (dataset-fashion-mnist: the IDX files under /usr/share/datasets/fashion-mnist/),
# read by scripts/fashion_mnist_imagefolder.py and its test (dynamics_assets_tests/core/evaluate/test_labelled_eval.py).
# Idempotent: a no-op once the t10k files are there.
set -euo pipefail
DIR=/usr/share/datasets/fashion-mnist
[ -f "$DIR/t10k-images-idx3-ubyte.gz" ] && [ -f "$DIR/t10k-labels-idx1-ubyte.gz" ] && exit 0
bash "$(dirname "$0")/apt_install.sh" dataset-fashion-mnist
echo "install_fashion_mnist: $(ls "$DIR")"

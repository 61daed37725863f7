"""The GPU run: a bundle of model files prepared here (`prepare`), weights filled there (`fill`), and `run.sh`, which
installs onnxruntime-gpu from parts and benchmarks every bundle model on the CUDA provider in one go."""

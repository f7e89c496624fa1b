"""CPU fast paths: fused layers and int4/int8 weight-only linears that replace a model's
layers in place, and a native decode step over them. Each is checked against the
float32 model in tests."""

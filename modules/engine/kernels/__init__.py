"""CPU fast paths that replace a model's layers in place (fused layers, int4/int8
weight-only linears). Each is checked against the float32 model in tests."""

"""Teacher model families (tf_keras): layers, families, registry."""

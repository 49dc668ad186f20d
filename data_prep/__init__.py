"""Raw datasets (ScanNet v2, S3DIS, Structured3D) and synthetic data -> versioned TFRecord shards."""

"""The wire: generated protobuf code (v1), tensor chunk streams, and proto <-> domain conversion."""

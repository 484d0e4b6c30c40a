"""The pipeline (worker role): inspect, validate, probe media, thumbnails, commit."""

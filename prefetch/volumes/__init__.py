"""Data volumes: versioned files plus metadata, queried, split and streamed into training."""

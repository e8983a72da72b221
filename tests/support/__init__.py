"""Real servers on loopback that tests across vor share (S3, webhook receiver)."""

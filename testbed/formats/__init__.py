"""What the testbed writes and reads back: the result schema, run directories, the partition bundle format."""

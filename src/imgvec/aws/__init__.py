"""imgvec on AWS Lambda: the embedding function with the file-index worker's contract (docs/aws.md)."""

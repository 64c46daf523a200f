"""The embedded AWS stack: one loopback endpoint for S3, SQS, ECR, IAM/STS, Logs."""

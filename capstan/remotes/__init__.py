"""Remote repositories (GitHub releases, S3/GCS/file buckets: catalog) and verified,
resumable downloads (download)."""

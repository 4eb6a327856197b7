"""Remote repositories (github, bucket; the configured ones: catalog) and verified,
resumable downloads (download)."""

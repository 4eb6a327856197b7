"""Services, one noun each: the only layer the commands call. Nothing is imported
here, so `capstan --help` stays fast."""

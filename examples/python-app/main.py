print("Hello from Python on OSv")

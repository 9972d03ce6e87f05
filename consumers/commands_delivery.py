"""Commands: deliver, run, wechat-sim, demo."""

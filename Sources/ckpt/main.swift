print("ckpt")

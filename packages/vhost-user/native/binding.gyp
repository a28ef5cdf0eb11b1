{
  "targets": [
    {
      "target_name": "vhost_user",
      "sources": ["vhost_user.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
      "defines": ["NAPI_VERSION=8"],
      "conditions": [["OS!='linux'", { "type": "none" }]]
    }
  ]
}

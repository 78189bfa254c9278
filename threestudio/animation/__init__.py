"""Animation of avatars: motion files, retargeting to the body template, Gaussian skinning, video,
per-frame PLY export and a web viewer."""

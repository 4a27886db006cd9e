"""Pool workers as Ray actors: the actor that runs a worker (`actor`), and its relay beside the trainer (`relay`)."""

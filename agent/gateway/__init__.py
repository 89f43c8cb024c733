"""dcem-meter-gateway: reads facility electricity meters over Modbus TCP and publishes them as meter samples."""

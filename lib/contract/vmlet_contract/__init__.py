"""The vmlet provider contract: generated gRPC code and the scaffold every provider serves on."""

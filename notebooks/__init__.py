"""The guided tour: notebooks committed with their outputs, and the tool that executes them."""

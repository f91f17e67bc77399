"""Generated from proto/ by hack/genproto.sh; do not edit."""

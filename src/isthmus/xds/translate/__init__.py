"""xds/translate"""

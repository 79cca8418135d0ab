pub mod metastore;
